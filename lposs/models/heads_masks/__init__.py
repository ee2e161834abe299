"""Two training-free dense CLIP heads that read a class-agnostic mask model, as pure functions of an open_clip ViT.

    feats = lposs.dense_clip_features(visual, windows, "corrclip", proxy=dino_qk, regions=window_regions)
        # windows [B, 3, s, s]; dino_qk [B, h', w', 768]; window_regions [B, h', w'] -> [B, h', w', D]
    feats = lposs.dense_clip_features(visual, windows, "trident", proxy=dino_tokens, cells=cells,
                                      canvas=canvas, sam_attn=attn, sam_v=v)
        # all windows of ONE image -> that image's features at SAM's grid [1, h_s, w_s, D]

    trident   Trident   YuHengsss/Trident@a93b346     ProxyCLIP's last block (DINO B/16) over all windows, spliced,
                                                    times SAM ViT-B's last-block affinity (`trident.py`; SAM's
                                                    tensors: lposs.models.sam_attention; windows, cells, canvas:
                                                    trident.release_windows)
    corrclip  CorrCLIP  zdk258/CorrCLIP@103bc18     DINO B/8 q + k affinity scoped by mask regions merged by
                                                    DBSCAN, region tokens (`corrclip.py`; regions from a mask model,
                                                    lposs.models.masks, e.g. SAM 2 as released)

Both return features after proj; `lposs.models.heads.dense_clip_features` L2-normalises them. Each module
registers its head's record (lposs.models.records).
"""
