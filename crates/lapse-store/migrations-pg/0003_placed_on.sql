-- The replica whose local provider (process, docker on a local socket) holds an environment:
-- only that replica reconciles it. NULL: whoever leads.
ALTER TABLE environments ADD COLUMN placed_on TEXT;
