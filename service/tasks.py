"""The jobs the worker runs, by kind: a new kind of job is one more line here."""

from collections.abc import Mapping

from service.item_files.service import EXPORT_ITEMS, IMPORT_ITEMS, export_items, import_items
from service.jobs.runner import JobHandler

JOB_HANDLERS: Mapping[str, JobHandler] = {
    EXPORT_ITEMS: export_items,
    IMPORT_ITEMS: import_items,
}
