"""Everything about ClickHouse: the Sink interface and its result types, the HTTP and embedded (chDB) carriers,
the sink factory, schema and migrations, error classes and explanations, rows, and read-only queries."""
