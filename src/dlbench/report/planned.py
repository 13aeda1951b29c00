"""Sections of the course the DAG does not produce yet; their modules replace these entries."""

from __future__ import annotations

from dlbench.report.sections import Section, register_section

register_section(Section("ensembles", "Ensembles and weight averaging",
                         "Deep ensembles, FGE/SSE/StarSSE, SWA/SWAG, model soups.", order=40))
register_section(Section("compression", "Compression", "Pruning, quantization, distillation.", order=50))
