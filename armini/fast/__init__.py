"""Fast (cached) samplers, kept apart from the models they speed up: each draws exactly what the
model's naive sampler draws, computing only what is new at each step.

    pixelcnn_cache         PixelCNN: the rows above once per row, one new position per step, a few matrix products
    gated_pixelcnn_cache   Gated PixelCNN: the vertical stack once per row, the horizontal one per pixel
    pixelcnnpp_cache   PixelCNN++'s U-net (Ramachandran et al., 2017)
    pixelsnail_cache   PixelSNAIL: its convolutions per pixel (rows above once per row), its attention with a KV cache
    pixelrnn_cache     Row LSTM and Diagonal BiLSTM: their LSTM states kept between steps

Their shared pieces (armini.sampling_cache): RasterCursor (where the sampler is, with guards),
RowConv (a causal convolution pixel by pixel along a row), LevelTable (each level's input features).
The generic cached sampler for stacks of causal convolutions is armini.sampling_cache (it runs a
model's own forward on strips of the image: what a PixelCNN subclass with a forward of its own gets); the transformer's KV cache lives with the model (armini.models.transformer),
since it is a few lines on top of armini.nn.attention.KVCache.
"""
