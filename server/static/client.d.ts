// Types of client.js (wire protocol v1, see protocol.md). Keep in step with its JSDoc.

/** What each close code means, in words for people (protocol.md, "Close codes"). */
export declare const CLOSE_MEANINGS: Readonly<Record<number, string>>;

/** A failure with the protocol's error `code` (protocol.md, "Error codes") or one of the client's. */
export declare class ProtocolError extends Error {
  /** Branch on this: e.g. `forbidden`, `timeout`, `closed`, `logged_out`, `expired`, `buffer_full`. */
  code: string;
  constructor(code: string, message: string);
}

export type State = "idle" | "connecting" | "connected" | "reconnecting" | "closed";

export interface CloseInfo {
  code: number;
  reason: string;
  meaning: string;
}

export interface User {
  id: number;
  name: string;
}

/** The protocol's handshake: the first `connected` frame of a socket. */
export interface ConnectedInfo {
  socket: string | null;
  user: User | null;
}

export interface StateChange {
  state: State;
  lastClose: CloseInfo | null;
}

/** After a room was joined again (a reconnect, or a gap in its events). */
export interface RecoveryInfo {
  room: string;
  /** Every missed event came back (false: some are lost; refetch what the page shows). */
  recovered: boolean;
  /** Events the re-join brought back, delivered to `on` listeners before this. */
  missed: number;
  /** The re-join failed: the client is no longer in the room. */
  error?: ProtocolError;
}

export interface ClientOptions {
  /** Emits and requests kept while not connected (100). */
  maxBuffered?: number;
  /** Milliseconds before the first reconnect, then doubled, with jitter (500). */
  backoffMin?: number;
  /** Milliseconds at most between reconnects (15000). */
  backoffMax?: number;
  /** Milliseconds before reconnecting after 4003, a newer login (250). */
  replacedDelay?: number;
}

export interface RequestOptions {
  /** Milliseconds to wait for the ack, buffering included (10000). */
  timeout?: number;
}

/** One socket to the server, reconnected by close code, with emits buffered meanwhile. */
export declare class Client {
  /** @param url of the socket, e.g. "/ws" (relative to the page; http becomes ws) */
  constructor(url: string, options?: ClientOptions);
  readonly url: string;
  readonly state: State;
  /** Of the last socket, or by close(). */
  readonly lastClose: CloseInfo | null;
  /** From the last handshake. */
  readonly socketId: string | null;
  /** From the last handshake. */
  readonly user: User | null;
  /** Since the last handshake. */
  readonly reconnectAttempts: number;

  /** Open the socket (again) and keep it open by reconnecting; call it once logged in. */
  connect(): void;
  /** Close the socket for good (1000): no reconnect; buffered emits and requests are rejected. */
  close(): void;

  /** Listen to a server event (any name; never the client's own notifications). Returns an unsubscribe. */
  on(event: string, fn: (data: any) => void): () => void;
  /** Stop listening to a server event. */
  off(event: string, fn: (data: any) => void): void;

  /** The client's state changed. Returns an unsubscribe. */
  onState(fn: (change: StateChange) => void): () => void;
  /** A socket was accepted (its handshake), after every reconnect too; buffered emits are sent after. */
  onConnected(fn: (info: ConnectedInfo) => void): () => void;
  /** The session is over (closed with 4001, 4002 or 4401): the client will not reconnect. */
  onSessionEnded(fn: (lastClose: CloseInfo) => void): () => void;

  /** A room joined with join() was joined again: whether the events missed came back. Returns an unsubscribe. */
  onRecovered(fn: (info: RecoveryInfo) => void): () => void;

  /** Join a room and stay in it: re-joined after every reconnect or gap, missed events replayed in order, each once. */
  join<T = any>(room: string, options?: RequestOptions): Promise<T>;
  /** Leave a room joined with join(). */
  leave<T = any>(room: string, options?: RequestOptions): Promise<T>;
  /** The rooms joined with join(). */
  readonly rooms: string[];

  /** Answer server requests named `event`: the return value is the ack's data; a throw, an error ack. */
  onRequest(event: string, fn: (data: any) => unknown): void;

  /** Send an event that wants no answer: resolves once handed to the socket, rejects with a ProtocolError. */
  emit(event: string, data?: unknown): Promise<void>;
  /** Send an event and wait for its ack: resolves to the ack's data, rejects with a ProtocolError. */
  request<T = any>(event: string, data?: unknown, options?: RequestOptions): Promise<T>;
}
