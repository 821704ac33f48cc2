"""audiocraft calls spacy.cli.download when spacy.load fails with an IOError (the stand-in's fails otherwise)."""


def download(*args, **kwargs):
    raise RuntimeError("spacy is a stand-in on the GPU check (bench/stand_ins)")
