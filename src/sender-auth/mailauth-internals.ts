/**
 * Typed access to the few mailauth functions that its package index does not export but DMARC in
 * `rfc7489` mode and the disposition need, so that record parsing and policy tags (RFC 9989
 * sections 4.7 and 4.10.1), the domain existence test (appendix A.4) and the author domain rules
 * (section 5.3.1) stay exactly mailauth's. The mailauth version is
 * pinned in package.json; the DMARC tests exercise every function here, so a change of these
 * internals on upgrade fails the tests instead of passing silently.
 *
 * Nothing else may reach into mailauth's `lib/`.
 */
import { createRequire } from 'node:module';
import type { DnsResolve } from '../dns/scoped.ts';

export type { DnsResolve };

const require = createRequire(import.meta.url);

/** A parsed DMARC record: tag names lower-cased, `pct` and `ri` as numbers, `rr` the raw text. */
export interface DmarcRecord {
    readonly [tag: string]: string | number | undefined;
    readonly rr: string;
}

/** The policy tags a record is applied with (RFC 9989 section 4.10.1), validated. */
export interface PolicyTags {
    readonly p: 'none' | 'quarantine' | 'reject';
    readonly sp?: 'none' | 'quarantine' | 'reject';
    readonly np?: 'none' | 'quarantine' | 'reject';
}

interface GetDmarcRecordModule {
    /** The record that applies to a domain (tree walk), with `recordDomain` and `orgDomain`; or false. */
    (domain: string, resolver: DnsResolve, opts?: { strict?: boolean }): Promise<DmarcRecord | false>;
    /** Returns a per-message memoizing lookup of `_dmarc.<name>`: the record, false, or a thrown DNS error. */
    getPolicyTags: (record: DmarcRecord) => PolicyTags | null;
    /** RFC 9989 appendix A.4: false only for NXDOMAIN; throws on temporary DNS errors. */
    domainExists: (domain: string, resolver: DnsResolve) => Promise<boolean>;
    parseDmarcRecord: (txt: string, opts?: { strict?: boolean }) => DmarcRecord | null;
}

export type AuthorDomain =
    | { domain: string; authorDomain: string; mailboxes: number; reason?: undefined; domains?: undefined }
    | {
          reason: 'no-author-domain' | 'multiple-author-domains' | 'invalid-author-domain' | 'multiple-from-fields';
          domains: string[];
          mailboxes: number;
          domain?: undefined;
          authorDomain?: undefined;
      };

interface AuthorDomainModule {
    getAuthorDomain: (headerFrom: readonly string[] | string, fromFields: number) => AuthorDomain;
}

const record = require('mailauth/lib/dmarc/get-dmarc-record.js') as GetDmarcRecordModule;
const author = require('mailauth/lib/dmarc/author-domain.js') as AuthorDomainModule;

export const getDmarcRecord = (domain: string, resolver: DnsResolve, opts?: { strict?: boolean }) =>
    record(domain, resolver, opts);
export const getPolicyTags = record.getPolicyTags;
export const domainExists = record.domainExists;
export const parseDmarcRecord = record.parseDmarcRecord;
export const getAuthorDomain = author.getAuthorDomain;
