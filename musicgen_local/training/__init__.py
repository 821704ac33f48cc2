"""Fine-tuning MusicGen on a user's own audio: the dataset, the trainer, and its inputs.

`dataset` turns what the user sent (an archive or one audio file) into 30 s pieces with
descriptions; `trainer` teaches a MusicGen those pieces (LoRA or full), one micro-batch at a time so
that the device loop that owns the GPU can interleave it with decoding; `params` is the single
source of truth for the training inputs. The result is a `musicgen_local.tuned` tar.
"""
