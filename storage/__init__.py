"""The reinforced-dataset store: Zarr v3 schema, writer and reader (numpy + zarr only)."""

from dr.storage.layout import ids_dtype
from dr.storage.reader import StoreReader, open_group, read_header, store_exists
from dr.storage.schema import FORMAT, READABLE_VERSIONS, SCHEMA_VERSION, DatasetInfo, ParamFieldSpec, StoreHeader, StoreLayout
from dr.storage.writer import StoreWriter, now_iso

__all__ = [
    "FORMAT",
    "READABLE_VERSIONS",
    "SCHEMA_VERSION",
    "DatasetInfo",
    "ParamFieldSpec",
    "StoreHeader",
    "StoreLayout",
    "StoreReader",
    "StoreWriter",
    "ids_dtype",
    "now_iso",
    "open_group",
    "read_header",
    "store_exists",
]
