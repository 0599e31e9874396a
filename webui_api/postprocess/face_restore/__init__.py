"""Face restoration as A1111 does it: detect faces (RetinaFace), align each to the FFHQ
template, restore it with GFPGAN or CodeFormer (loaded by spandrel), paste it back.

Modules: detector (interface, FixedFaces, RetinaFace decoding), retinaface (the network,
torch), align (similarity transform, warps, soft paste mask), restorers (model files, the
pipeline, the service object), cache (loaded models kept between calls). Importing this
package does not import torch.
"""
