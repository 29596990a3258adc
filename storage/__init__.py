"""The reinforced-dataset store: Zarr v3 schema, writer and reader (numpy + zarr only)."""

from dr.storage.reader import StoreReader, open_group, read_header, store_exists
from dr.storage.schema import FORMAT, SCHEMA_VERSION, DatasetInfo, ParamFieldSpec, StoreHeader, ids_dtype
from dr.storage.writer import StoreWriter, now_iso

__all__ = [
    "FORMAT",
    "SCHEMA_VERSION",
    "DatasetInfo",
    "ParamFieldSpec",
    "StoreHeader",
    "StoreReader",
    "StoreWriter",
    "ids_dtype",
    "now_iso",
    "open_group",
    "read_header",
    "store_exists",
]
