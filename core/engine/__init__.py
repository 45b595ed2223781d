"""The engine: registry, session, planning, cost model, execution, accuracy and tuning."""
