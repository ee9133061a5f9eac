"""Networks: the VGG16 / VGG16-BN / Inception v3 backbones, the study's dense heads, the classifier."""
