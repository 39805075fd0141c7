"""The networks the stages run and the one seam that loads their weights (``loading``): Light-ASD, SAM2,
the face detectors, Qwen2-VL's tiny twin, SyncNet's score math, the VAD; ``weights`` declares what each stage
downloads. No stage here: mtcc.stages builds on these."""
