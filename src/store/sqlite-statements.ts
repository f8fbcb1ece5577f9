/**
 * Every SQL statement of the SQLite store (sqlite.ts), prepared once when the file is opened.
 * All of them are finalized at close: a live one would keep the file, and its lock, open.
 */
import type { Database, Statement } from "bun:sqlite";
import { SAVE_COUNTERS } from "./counter-log";
import { AHEAD_MAX_BODY, READ_AHEAD } from "./sqlite-heads";

export function prepareStatements(db: Database) {
  const all: Statement[] = [];
  /** Prepares a statement that finalize() will finalize (space.ts prepares its own with it). */
  const sql = (text: string): Statement => {
    const statement = db.prepare(text);
    all.push(statement);
    return statement;
  };
  return {
    sql,
    finalize: () => all.forEach((statement) => statement.finalize()),
    begin: sql("BEGIN"),
    commitTx: sql("COMMIT"),
    rollbackTx: sql("ROLLBACK"),
    createQueue: sql("INSERT INTO queues(name) VALUES (?) RETURNING id"),
    logCounters: sql("INSERT INTO counter_log(data) VALUES (?)"),
    clearLog: sql("DELETE FROM counter_log"),
    saveQueue: sql(SAVE_COUNTERS),
    deleteQueue: sql("DELETE FROM queues WHERE id = ?"),
    insert: sql("INSERT INTO messages(id, qid, flags, created, expires, body) VALUES (?, ?, ?, ?, ?, ?)"),
    headRows: sql(
      `SELECT id, flags, expires, CASE WHEN length(body) <= ${AHEAD_MAX_BODY} THEN body END, created FROM messages ` +
        `WHERE qid = ? AND opened = 0 ORDER BY id LIMIT ${READ_AHEAD}`,
    ),
    byMessageId: sql("SELECT id, flags, expires, body FROM messages WHERE id = ?"),
    deleteTaken: sql("DELETE FROM messages WHERE qid = ? AND opened = 0 AND id BETWEEN ? AND ?"),
    markOpen: sql("UPDATE messages SET opened = 1, deliveries = deliveries + 1 WHERE id = ?"),
    confirmOpen: sql("DELETE FROM messages WHERE id = ? AND opened = 1 RETURNING length(body)"),
    releaseOpen: sql("UPDATE messages SET opened = 0 WHERE id = ? AND opened = 1"),
    releaseAll: sql("UPDATE messages SET opened = 0 WHERE qid = ? AND opened = 1"),
    countOpen: sql("SELECT count(*) FROM messages WHERE qid = ? AND opened = 1"),
    deleteQueueMessages: sql("DELETE FROM messages WHERE qid = ?"),
    deleteAllMessages: sql("DELETE FROM messages"),
    headCreated: sql("SELECT created FROM messages WHERE qid = ? AND opened = 0 AND id > ? ORDER BY id LIMIT 1"),
    openCreated: sql("SELECT created FROM messages WHERE qid = ? AND opened = 1 ORDER BY id LIMIT 1"),
    oldest: sql(
      "SELECT min(created) FROM (" +
        "SELECT * FROM (SELECT created FROM messages WHERE qid = ?1 AND opened = 0 ORDER BY id LIMIT 1) UNION ALL " +
        "SELECT * FROM (SELECT created FROM messages WHERE qid = ?1 AND opened = 1 ORDER BY id LIMIT 1))",
    ),
    // Delayed delivery (sqlite-delays.ts).
    insertDelayed: sql("INSERT INTO delayed(id, qid, due, flags, created, expires, body) VALUES (?, ?, ?, ?, ?, ?, ?)"),
    delayOpen: sql(
      "INSERT INTO delayed(id, qid, due, flags, created, expires, deliveries, body) " +
        "SELECT id, qid, ?2, flags, created, expires, deliveries, body FROM messages WHERE id = ?1 AND opened = 1",
    ),
    deleteOpen: sql("DELETE FROM messages WHERE id = ? AND opened = 1"),
    dueInQueue: sql("SELECT id FROM delayed WHERE qid = ? AND due <= ? ORDER BY due, id LIMIT ?"),
    promoteOne: sql(
      "INSERT INTO messages(id, qid, flags, created, expires, deliveries, body) " +
        "SELECT ?1, qid, flags, created, expires, deliveries, body FROM delayed WHERE id = ?2",
    ),
    deleteDelayed: sql("DELETE FROM delayed WHERE id = ?"),
    nextDueOf: sql("SELECT min(due) FROM delayed WHERE qid = ?"),
    // One seek on delayed_due, however many messages wait: nothing due costs no transaction. No
    // DISTINCT: its temporary b-tree needs disk, and on a full disk the query failed, which failed
    // every housekeeping batch (and the give-backs in it) until the disk had room (stress, fulldisk).
    queuesDue: sql("SELECT qid FROM delayed WHERE due <= ? ORDER BY due LIMIT ?"),
    delayedCounts: sql("SELECT qid, count(*), min(due) FROM delayed GROUP BY qid"),
    deleteQueueDelayed: sql("DELETE FROM delayed WHERE qid = ?"),
    deleteAllDelayed: sql("DELETE FROM delayed"),
    // Uses the partial index messages_expiry: one seek, and no transaction, when nothing is due.
    due: sql("SELECT 1 FROM messages WHERE expires > 0 AND expires <= ? AND opened = 0 LIMIT 1"),
    sweep: sql(
      "DELETE FROM messages WHERE id IN (SELECT id FROM messages WHERE expires > 0 AND expires <= ? AND opened = 0 " +
        "LIMIT ?) RETURNING qid, length(body)",
    ),
  };
}
