// Client for the token-mint Lambda: HighLevel location and agency access
// tokens in one call, cached in this process until expiresAt - minValidity,
// one invoke per key at a time, typed errors. See README.md.
import { InvokeCommand } from "@aws-sdk/client-lambda";

export const DEFAULT_MIN_VALIDITY_SECONDS = 300;
// Asked of the mint beyond minValidity: the least a fetched token stays cached.
export const FETCH_AHEAD_SECONDS = 900;
const MINT_MAX_VALIDITY = 82_800;

const RETRYABLE = new Set(["RateLimited", "UpstreamUnavailable", "Internal"]);
const PERMANENT = new Set([
  "InvalidRequest", "InstallNotFound", "NeedsReauthorization",
  "LocationNotInstalled", "AppUninstalled", "BadResponse",
]);

/** A failure with the mint's stable errorType (or Invoke / BadResponse). */
export class TokenError extends Error {
  constructor(errorType, message, { retryable, retryAfterSeconds, cause } = {}) {
    super(`${errorType}: ${message}`, cause ? { cause } : undefined);
    this.name = "TokenError";
    this.errorType = errorType;
    // Lambda's own failures (Sandbox.Timedout, …) and unknown types pass.
    this.retryable = retryable ?? !PERMANENT.has(errorType);
    this.retryAfterSeconds = retryAfterSeconds;
  }
  isRetryable() {
    return this.retryable;
  }
}

/** The bearer token; prints as [redacted] in logs, JSON and inspection. */
export class SecretToken {
  #value;
  constructor(value) {
    this.#value = value;
  }
  expose() {
    return this.#value;
  }
  toString() {
    return "[redacted]";
  }
  toJSON() {
    return "[redacted]";
  }
  [Symbol.for("nodejs.util.inspect.custom")]() {
    return "SecretToken([redacted])";
  }
}

function mintError(payload) {
  let doc = {};
  try {
    doc = JSON.parse(payload);
  } catch {
    // Lambda's own failures may carry plain text: the type alone is kept.
  }
  const type = doc.errorType ?? "Unhandled";
  const message = doc.errorMessage ?? "";
  const m = /retry after (\d+)/.exec(message);
  return new TokenError(type, message, {
    retryable: RETRYABLE.has(type) ? true : undefined,
    retryAfterSeconds: type === "RateLimited" && m ? Number(m[1]) : undefined,
  });
}

function invokeError(e) {
  const code = e?.name ?? "Unknown";
  const retryable = e?.$retryable !== undefined ||
    ["TooManyRequestsException", "ServiceException", "EC2ThrottledException",
      "ResourceNotReadyException", "ResourceConflictException", "TimeoutError"].includes(code) ||
    (e?.$metadata?.httpStatusCode === undefined);
  return new TokenError("Invoke", `Lambda Invoke failed (${code}): ${e?.message ?? e}`, { retryable, cause: e });
}

export class TokenClient {
  #lambda;
  #functionName;
  #clientContext;
  #minValidityMs;
  #slots = new Map(); // "kind#id" -> {token, flight}

  /**
   * @param lambda a LambdaClient from @aws-sdk/client-lambda
   * @param functionName the mint's name or ARN (TokenMintFunctionArn)
   * @param options {caller, minValiditySeconds}
   */
  constructor(lambda, functionName, { caller, minValiditySeconds = DEFAULT_MIN_VALIDITY_SECONDS } = {}) {
    this.#lambda = lambda;
    this.#functionName = functionName;
    this.#minValidityMs = minValiditySeconds * 1000;
    this.#clientContext = caller === undefined ? undefined
      : Buffer.from(JSON.stringify({ custom: { caller } })).toString("base64");
  }

  /** The location's token; companyId is needed only for a location the mint does not know yet. */
  locationToken(locationId, { companyId } = {}) {
    return this.#token("Location", locationId, companyId);
  }

  /** The agency's own token (company-level endpoints). */
  companyToken(companyId) {
    return this.#token("Company", companyId);
  }

  /** The locations where the agency app is installed; not cached. */
  async installedLocations(companyId) {
    return this.#call({ action: "listInstalledLocations", companyId });
  }

  /** Forgets a cached token (say, after HighLevel answered 401 to it). */
  forget(kind, id) {
    const slot = this.#slots.get(`${kind}#${id}`);
    if (slot) slot.token = undefined;
  }

  #token(kind, id, companyId) {
    const key = `${kind}#${id}`;
    let slot = this.#slots.get(key);
    if (!slot) this.#slots.set(key, (slot = {}));
    if (slot.token && slot.token.validUntil - Date.now() > this.#minValidityMs) {
      return Promise.resolve(slot.token);
    }
    // Callers arriving while an invoke is under way share its promise.
    if (!slot.flight) {
      slot.flight = this.#fetch(kind, id, companyId).then(
        (token) => {
          slot.flight = undefined;
          slot.token = token;
          return token;
        },
        (err) => {
          slot.flight = undefined;
          throw err;
        },
      );
    }
    return slot.flight;
  }

  async #fetch(kind, id, companyId) {
    const minValiditySeconds = Math.min(
      Math.floor(this.#minValidityMs / 1000) + FETCH_AHEAD_SECONDS, MINT_MAX_VALIDITY);
    const request = kind === "Company"
      ? { action: "companyToken", companyId: id, minValiditySeconds }
      : { locationId: id, ...(companyId ? { companyId } : {}), minValiditySeconds };
    const sentAt = Date.now();
    const a = await this.#call(request);
    if (typeof a.accessToken !== "string" || typeof a.expiresIn !== "number") {
      throw new TokenError("BadResponse", "the answer has no accessToken or expiresIn");
    }
    return Object.freeze({
      token: new SecretToken(a.accessToken),
      tokenType: a.tokenType ?? "Bearer",
      expiresAt: a.expiresAt,
      scope: a.scope ?? null,
      companyId: a.companyId ?? null,
      locationId: a.locationId ?? null,
      userType: a.userType,
      source: a.source,
      // This process's clock: a skewed clock cannot stretch the token's life.
      validUntil: sentAt + a.expiresIn * 1000,
      authorization() {
        return `${this.tokenType} ${this.token.expose()}`;
      },
    });
  }

  async #call(request) {
    let out;
    try {
      out = await this.#lambda.send(new InvokeCommand({
        FunctionName: this.#functionName,
        Payload: Buffer.from(JSON.stringify(request)),
        ClientContext: this.#clientContext,
      }));
    } catch (e) {
      throw invokeError(e);
    }
    const text = Buffer.from(out.Payload ?? []).toString("utf8");
    if (out.FunctionError) throw mintError(text);
    try {
      return JSON.parse(text);
    } catch {
      // Never the text itself: it could hold a token.
      throw new TokenError("BadResponse", "the answer is not JSON");
    }
  }
}
