"""Router drivers: the interface (base), the registry, one package per vendor."""
