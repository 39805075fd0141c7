"""The names of a sample's members, in one place: every stage that makes one, the shard writer (tar order),
the schema check, the report, the training loader and the export name members from here (character ``k``'s
separated speech is ``TRACKS[k]``, its reference picture ``REFS[k]``)."""

from __future__ import annotations

MP4 = "mp4"  # the clip, H.264 at 25 fps with 16 kHz mono AAC (cut)
MIX = "mix.flac"  # the original mixture, 16 kHz mono (cut)
TRACKS = ("spk0.flac", "spk1.flac")  # each character's separated speech (separate)
FACES = "faces.json"  # per character per frame: box, landmarks, score, speaking logit (segment, asd -> write)
MASKS = "masks.rle.json"  # per character per frame SAM2 mask, COCO RLE (masks)
ROUTE = "route.npy"  # routing ground truth on the latent grid, one slice per training window (masks)
AUDIO_EMB = "audio_emb.npy"  # Wav2Vec2 hidden states of each separated track (audio_emb)
REFS = ("ref0.jpg", "ref1.jpg")  # each character's reference picture (cut, then masks)
IDENTITY = "identity.npy"  # each character's face descriptors, [characters, frames, 128] float32 (identity)
CAPTION = "caption.txt"  # Qwen2-VL caption (caption)
META = "json"  # the sample's meta: source, stats, facts, models, versions (commit)

# tar order within a sample; a member a stage adds beyond these follows them, sorted by name
MEMBERS = (MP4, MIX, *TRACKS, FACES, MASKS, ROUTE, AUDIO_EMB, *REFS, IDENTITY, CAPTION, META)

