"""Synthetic, BCS-DBT-shaped datasets for the demo, the tests and the benchmarks.

Test and demo tooling, kept apart from the pipeline's steps in ``tasks/``. The modules, in
the order a dataset is made:

* :mod:`synth.layout`: the release's sizes, CSV names and columns, deterministic UIDs.
* :mod:`synth.plan`: patients, studies, volumes, splits, lesion boxes and the collection's
  traps, all drawn from ``seed``.
* :mod:`synth.render`: the pixels of each frame (anatomy, texture, lesions).
* :mod:`synth.report_text`: the report export (radiology, pathology, distractors).
* :mod:`synth.dicom_writer`: multi-frame JPEG 2000 DBT files (:func:`write_dbt_dicom`,
  :func:`write_dbt_dicom_frames`), usable on their own.
* :mod:`synth.generate`: :func:`generate_dataset`, the whole collection under one folder
  (``tomoflow synth``).

Everything is a function of ``seed``: the same seed gives the same bytes in every file.
"""
