"""Video -> DiffTalk dataset preprocessing (SPEC 1-3), one step per module.

landmarks + tracking (68 iBUG points), crop (square face crop), audio_dsp + audio_encoders +
audio_features (50 Hz features, (16, D) windows, (8, 16, D) smoothing), pipeline (one video),
runner (many videos), dataset (registry, data.txt, lists), check (validation), synthetic (test
videos), identity (dlib face descriptors: the persons a model was trained on). Video I/O (ffmpeg)
is ldm/video.py. CLIs: scripts/preprocess.py, scripts/check_dataset.py.
"""
