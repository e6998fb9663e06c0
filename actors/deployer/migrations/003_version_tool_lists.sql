-- What each version serves in `tools/list` (name, title, description, inputSchema, annotations as JSON), recorded
-- from its first passed health check, the version that served before it was deployed (NULL: none did), and what
-- its tool list changed against that one (a ToolListDiff, computed when its list is recorded), so a version's tool
-- changes survive restarts and do not depend on what runs now.
ALTER TABLE server_versions ADD COLUMN tool_list jsonb;
ALTER TABLE server_versions ADD COLUMN replaces integer;
ALTER TABLE server_versions ADD COLUMN tool_changes jsonb;

-- Versions deployed before this was recorded: the one numbered before (the usual case; rollbacks were not kept).
UPDATE server_versions SET replaces = version - 1 WHERE version > 1;
