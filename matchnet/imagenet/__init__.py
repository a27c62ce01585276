"""Full ImageNet (ILSVRC-2012) for the paper's Table 3 (section 4.1.2): the rand and dogs class splits, the
streamed image data, the backbones, and the two training stages as tasks of the one engine.

  splits.py     L_rand / L_dogs and their complements (package data, built by train/build_imagenet_splits.py)
  data.py       train/<wnid>/*.JPEG and val/ in its usual layouts, decoded in DataLoader workers
  backbones.py  Inception-v3 / ResNet-50 (torchvision architectures) or a tiny CNN for tests; local weights
  tasks.py      stage 1 (the classifier) and stage 2 (Matching Nets + FCE) as engine tasks
  evaluate.py   the test: 5-way 1-shot on feature tables (pixels, classifier, Matching Nets, the Oracle)
"""
