"""The models: what turns windows into seeds and graph features.

    vit          an open_clip ViT taken apart: position embeddings, every block's output, one block's q/k/v
    heads        HEADS, the one registry of dense CLIP heads; the last-block ones (MaskCLIP, SCLIP, ClearCLIP,
                 NACLIP, ProxyCLIP) and dense_clip_features, which also runs the 2025 heads
    heads_2025   SC-CLIP, SFP, PEARL, ResCLIP, CASS: heads that read intermediate blocks, one window at a time
    backbones    DenseCLIP (any head + the prompt-ensemble text classifier), VisionFeatures (timm q/k/v/tokens,
                 CASS's raw keys)
    text         the text classifier: synonyms, the 80 templates, prompts run only up to their end-of-text token
    text_cache   class embeddings on disk across runs (LPOSS_CACHE), keyed by the text weights' own digest
    rope         DINOv3's rotary position embedding on q/k, as timm applies it (for the q_rope/k_rope features)
    loading      which weights go with which model; loading them, or failing fast offline with the fix
    protocols    each release's evaluation protocol: background rule, constants, windows, class files
    factory      the one door: BackboneSpec -> create_backbones (demo, random, pretrained, checkpoints)
"""
