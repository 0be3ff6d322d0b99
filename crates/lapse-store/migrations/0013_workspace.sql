-- S3 workspaces (issue 12, item 6): the sync state of each environment with a
-- `spec.workspace`. A row appears with the first sync attempt. `pull_token` is set by a
-- successful pull, which also writes it into the directory (`.lapse-sync`): a push deletes
-- objects only when the directory still holds that token (a directory that was never pulled,
-- or a resource made afresh, must not empty the workspace). `force` is set by
-- `DELETE ...?force=true`: the final push is skipped.
CREATE TABLE workspace_sync (
    environment_id TEXT PRIMARY KEY NOT NULL,
    pull_token TEXT,
    last_pull_at INTEGER,
    last_push_at INTEGER,
    last_error TEXT,
    last_error_at INTEGER,
    pushes INTEGER NOT NULL DEFAULT 0,
    force INTEGER NOT NULL DEFAULT 0
);
