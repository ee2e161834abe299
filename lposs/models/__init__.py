"""The models: what turns windows into seeds and graph features.

    vit          an open_clip ViT taken apart: position embeddings, every block's output, one block's q/k/v
    records      a release is one record (HeadRecord): a head's function, kind, defaults, inputs, proxy and mask
                 model, protocol, published rows, release; register_head
    head_registry  HEADS, the one registry: every module of the heads_* packages, found and looked up
    heads        dense_clip_features: every head run through the runner of its kind
    heads_2024   MaskCLIP (LPOSS's), SCLIP, ClearCLIP, NACLIP, ProxyCLIP: one module and one record each
    heads_2025   SC-CLIP, SFP, PEARL, ResCLIP, CASS: heads that read intermediate blocks, one window at a time
    heads_masks  Trident, CorrCLIP: heads that read SAM's tensors or a mask model's regions
    protocol_bases  what the releases' protocols share (the SCLIP family's scoring and windows)
    backbones    DenseCLIP (any head + the prompt-ensemble text classifier), VisionFeatures (timm q/k/v/tokens,
                 CASS's raw keys)
    text         the text classifier: synonyms, the 80 templates, prompts run only up to their end-of-text token
    text_cache   class embeddings on disk across runs (LPOSS_CACHE), keyed by the text weights' own digest
    rope         DINOv3's rotary position embedding on q/k, as timm applies it (for the q_rope/k_rope features)
    loading      which weights go with which model; loading them, or failing fast offline with the fix
    protocols    LPOSS's protocol and each record's, resolved per dataset: background rule, constants, windows,
                 class files, own step
    factory      the one door: BackboneSpec -> create_backbones (demo, random, pretrained, checkpoints)
"""
