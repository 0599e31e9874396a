"""Per-family generation code for model families whose networks differ from SD's UNet
(flow-matching transformers: Flux.1). Each module runs a GenerationJob on a LoadedModel of
its family and reuses the shared steps (batches, seeds, decoding, img2img preparation)."""
