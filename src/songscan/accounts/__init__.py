"""songscan accounts: tokens, plans, the usage ledger, quotas, payments."""
