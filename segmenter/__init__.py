"""The mask service (docs/design.md section 6).

service.py   the consumer-group loop, the Ray actor and its placement
main.py      `python -m segmenter.main`, one instance as a plain process
config.py    SegmenterConfig (the service's settings plus each backend's)
backends/    oracle (ground truth), sam (Segment Anything), student (learned online)
imperfection.py  erosion/dilation and mask dropout knobs; quality.py  per-frame IoU
"""
