"""TEE quote providers: one module per guest interface, one factory."""
