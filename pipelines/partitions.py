import dagster as dg

from qeforge.categories import CATEGORIES

# One partition per QE task category; every per-category asset uses this definition.
category_partitions = dg.StaticPartitionsDefinition(list(CATEGORIES))
