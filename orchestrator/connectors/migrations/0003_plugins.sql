-- What handler plugins keep: a small durable key-value store per plugin instance.
CREATE TABLE plugin_kv (
    scope TEXT NOT NULL,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (scope, key)
);
