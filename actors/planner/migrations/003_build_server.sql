-- The server a deployed build runs as, and its URL (from its `deployed` event), so GET /v1/builds/{id} says
-- where to connect without reading the event stream.
ALTER TABLE builds ADD COLUMN server_id text, ADD COLUMN url text;
