"""The labelling assistant: pre-labels from the autoencoder, checked by supervised checker models.

labelme.py (LabelMe JSON <-> masks), dataset.py (MVTec layout, import), prelabel.py, folds.py, training.py (checkers;
the network and its export are inspectd/labelling/checker.py), rules.py (IoU and the label-check rules), check.py
(onnxruntime only),
report.py (HTML review page), cli.py (`inspectd label ...`), experiment.py (the 10 % corruption measurement).
"""
