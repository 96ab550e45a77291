"""The on-chain measurement policy: the pure model, the RPC reader, the contract bindings."""
