"""Stand-in for xformers.profiler: no profiler ever runs on the GPU check."""


def profile(*args, **kwargs):
    raise RuntimeError("xformers' profiler is a stand-in on the GPU check (bench/stand_ins)")
