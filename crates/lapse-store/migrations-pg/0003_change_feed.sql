-- The change feed across replicas: every committed insert or update of an environment row
-- notifies channel `lapse_env` with "<application_name> <id>" (a replica names its
-- connections `lapse <replica id>`, so a replica knows its own changes). Notifications are
-- transactional: they are delivered when, and only if, the transaction commits. A
-- transaction that sets `lapse.quiet` to 'on' (activity batches: not on the feed) notifies
-- nothing. PostgreSQL only: SQLite has one writer, whose changes its own process publishes.
CREATE FUNCTION lapse_env_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF coalesce(current_setting('lapse.quiet', true), '') <> 'on' THEN
        PERFORM pg_notify('lapse_env', current_setting('application_name') || ' ' || NEW.id);
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER environments_changed AFTER INSERT OR UPDATE ON environments
    FOR EACH ROW EXECUTE FUNCTION lapse_env_changed();
