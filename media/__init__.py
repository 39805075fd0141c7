"""Media the stages (and training) read and write: ffmpeg/ffprobe (one module, argument lists only), frames
decoded at the size a stage needs, audio, face crops, latent geometry, masks as RLE, windows, cuts, tracks.
No stage and no model here: the stages in mtcc.stages build on these."""
