"""``mtcc bench --gpu``: the model stages at full size on one GPU, and what that means for a whole build.

Per model stage (separate, asd, sync, masks, audio_emb, caption) the real architecture is built with random
weights straight on the device (no weight files: the arithmetic of a forward does not depend on the
values), fed inputs shaped like a real clip, and run through the stage's own code path (its batching,
windowing, normalisation and forward helpers) for each batch size of a sweep. Per batch size: seconds per
call and per model forward, clip-seconds of media per second, peak GPU memory, and GPU utilisation sampled
from NVML during the timed calls. A sweep stops at the first out-of-memory. The best batch size of each
stage then gives the projected hours of raw video per GPU-hour.

``--device cpu --scale tiny`` runs the same code on the reduced models ``mtcc models make-tiny`` writes
(plumbing and tests; the numbers mean nothing there).

Where to look:
  * ``run``: the command (arguments, the loop over stages, the JSON document);
  * ``plan``: which stages, which batch sizes, what is taken from the profile;
  * ``stages``: one builder per model stage (what a batch is for each, what a clip looks like);
  * ``timing`` and ``utilisation``: timing a call, sweeping batch sizes, sampling the GPU;
  * ``projection``: keep rates and hours of raw video per GPU-hour;
  * ``report``: the printed table.
"""
