"""The small shared kit every layer may use: settings, errors, the text rule, field types,
money as text, the guarded outbound client, sealing, group commit. It imports nothing else of
the app."""
