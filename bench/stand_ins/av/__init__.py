"""Stand-in: audiocraft reads audio files with av; the GPU check reads none."""


def open(*args, **kwargs):  # noqa: A001 - the name audiocraft calls
    raise RuntimeError("av is a stand-in on the GPU check (bench/stand_ins)")
