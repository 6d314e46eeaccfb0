-- A campaign can take several imports, and each file starts again at line 1: refused rows are
-- kept per import, so a second file's line 7 no longer hides the first's.
ALTER TABLE campaigns ADD COLUMN imports INTEGER NOT NULL DEFAULT 0;
UPDATE campaigns SET imports = 1 WHERE rows_total > 0;
ALTER TABLE campaign_errors RENAME TO campaign_errors_0004;
CREATE TABLE campaign_errors (
    campaign_id TEXT NOT NULL,
    import_no INTEGER NOT NULL,
    line INTEGER NOT NULL,
    reason TEXT NOT NULL,
    CONSTRAINT campaign_errors_by_import PRIMARY KEY (campaign_id, import_no, line)
);
INSERT INTO campaign_errors (campaign_id, import_no, line, reason)
SELECT campaign_id, 1, line, reason FROM campaign_errors_0004;
DROP TABLE campaign_errors_0004;
