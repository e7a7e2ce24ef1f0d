"""Fast (cached) samplers, kept apart from the models they speed up: each draws exactly what the
model's naive sampler draws, computing only what is new at each step.

    pixelcnnpp_cache   PixelCNN++'s U-net (Ramachandran et al., 2017)
    pixelsnail_cache   PixelSNAIL: its convolutions per pixel, its attention with a KV cache
    pixelrnn_cache     Row LSTM and Diagonal BiLSTM: their LSTM states kept between steps

The generic cached sampler for stacks of causal convolutions (PixelCNN, Gated PixelCNN) is
armini.sampling_cache; the transformer's KV cache lives with the model (armini.models.transformer),
since it is a few lines on top of armini.nn.attention.KVCache.
"""
