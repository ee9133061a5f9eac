"""Networks for tomoflow: VGG16 (with or without batch normalisation) / Inception v3 backbones, the study's dense heads, the classifier."""
