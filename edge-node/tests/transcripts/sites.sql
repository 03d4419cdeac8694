CREATE TABLE sites (id INTEGER PRIMARY KEY, name TEXT NOT NULL, lat REAL);
CREATE TABLE sensors (id INTEGER PRIMARY KEY, site INTEGER, kind TEXT, hits COUNTER);
INSERT INTO sites VALUES (1, 'north', 59.5), (2, 'south', NULL);
INSERT INTO sensors (id, site, kind) VALUES (10, 1, 'temp'), (11, 1, 'flow;rate'), (12, NULL, 'spare');
UPDATE sensors SET hits = hits + 3 WHERE site = 1;
SELECT s.id, t.name, s.kind, s.hits
  FROM sensors s LEFT JOIN sites t ON t.id = s.site
  ORDER BY s.id;
SELECT name, lat, lat * 2 AS twice FROM sites ORDER BY id;
.mode csv
SELECT name, COUNT(*) FROM sites JOIN sensors ON sensors.site = sites.id GROUP BY name;
.mode json
SELECT id, name, lat FROM sites ORDER BY id;
.mode line
SELECT kind, hits FROM sensors WHERE id = 11;
.mode table
.tables
.schema sites
-- a site's name can't be NULL; a quote in a comment is text, not the start of a string
SELECT COUNT(*) AS n FROM sites;
.conflicts
