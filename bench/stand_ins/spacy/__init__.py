"""Stand-in: audiocraft's conditioners import spacy for their word tokenizers; MusicGen uses T5's."""

from spacy import cli  # noqa: F401 - audiocraft reaches it as spacy.cli


def load(*args, **kwargs):
    raise RuntimeError("spacy is a stand-in on the GPU check (bench/stand_ins)")
