"""Prefect flows of tomoflow: each module wires tasks, nothing more.

Importing a flow module changes nothing in the process: the environment defaults and the
log redaction are applied explicitly (:func:`tasks.infra.process_defaults.apply_process_defaults`)
by the ``tomoflow`` command, the service's worker and each flow when it starts.
"""
