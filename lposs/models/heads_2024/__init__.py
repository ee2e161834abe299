"""The training-free dense CLIP heads of 2024 (and MaskCLIP, LPOSS's), one module and one record each.

    maskclip   MaskCLIP   (LPOSS's seeds)                the last block's values, residual and FFN kept
    sclip      SCLIP      wangf3014/SCLIP@b56bd30        q-q + k-k attention in the last block
    clearclip  ClearCLIP  mc-lan/ClearCLIP@ad68a40       q-q attention, residual and FFN dropped
    naclip     NACLIP     sinahmr/NACLIP@0cac3a6         k-k attention + a Gaussian neighbourhood prior
    proxyclip  ProxyCLIP  mc-lan/ProxyCLIP@e7b767f       attention from a vision model's tokens (DINO B/8)

Each is a "last_block" head (lposs.models.records.KINDS): tokens entering CLIP's last block -> patch tokens.
"""
