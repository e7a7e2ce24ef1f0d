"""Fast (cached) samplers, kept apart from the models they speed up: each draws exactly what the
model's naive sampler draws, computing only what is new at each step.

    pixelcnnpp_cache   PixelCNN++'s U-net (Ramachandran et al., 2017)

The generic cached sampler for stacks of causal convolutions (PixelCNN, Gated PixelCNN) is
armini.sampling_cache.
"""
