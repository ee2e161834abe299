"""Five training-free dense CLIP heads of 2025, as pure functions of an open_clip ViT, one window at a time.

    feats = lposs.dense_clip_features(visual, windows, head="scclip")                    # [B, h, w, D], unit norm
    feats = lposs.dense_clip_features(visual, windows, "resclip", text=queries, temp_thd=0.5)
    feats = lposs.dense_clip_features(visual, windows, "cass", proxy=dino_keys)           # [B, h', w', 768] keys

Unlike the 2024 heads (lposs.models.heads_2024), these read intermediate blocks (x_4, x_9, x_11, blocks 6-9's
attention, ...), so each takes a `WindowTrace` (every block's output for one window) and returns that window's
patch tokens [N, W] before ln_post; `lposs.models.heads.dense_clip_features` applies ln_post, proj and the L2
norm. Every statistic (means, quantiles, outliers, labels, spectra) is computed per window, as the releases
run one window per forward ("traced" heads, lposs.models.records.KINDS). Off the 14x14 grid the position
embedding follows SCLIP's rule ("sclip"). Each module registers its head's record (lposs.models.records).

    scclip   SC-CLIP   SuleBai/SC-CLIP@0417ba9        LOF outliers, self-adjusting multi-level attention
    sfp      SFP       Kimsure/SFP@2804f5b            SOM outliers, three-way attention
    pearl    PEARL     PGSmall/PEARL@c26062b          Procrustes-aligned attention (its TLP post-step:
                                                      lposs.core.tlp)
    resclip  ResCLIP   yvhangyang/ResCLIP@0e085f7     RCS + SFR: needs text=[Q, D] unit queries and temp_thd
    cass     CASS      MICV-yonsei/CASS@228ecdd       spectral DINO-CLIP head matching: proxy = DINO last-block
                                                      keys [B, h', w', heads*d] (CLS dropped, head-major);
                                                      its text-side query adjustment: cass_text.cass_logits
"""

from .common import WindowTrace

__all__ = ["WindowTrace"]
