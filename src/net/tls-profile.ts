/**
 * The TLS profile of every listener, STARTTLS and implicit TLS alike (smtp-server builds one
 * secure context from these options for both):
 * - TLS 1.2 and 1.3 only (RFC 8996 retired 1.0 and 1.1).
 * - TLS 1.2: ECDHE key exchange with AEAD ciphers only (AES-GCM, ChaCha20-Poly1305; RFC 9325
 *   section 4.2): forward secrecy, and no CBC suites with their padding-oracle history, no
 *   static-RSA key exchange. TLS 1.3: OpenSSL's default suites (all AEAD, all forward secret).
 *   Node turns TLS 1.3 off when a cipher list names no TLS 1.3 suite, so they are listed too.
 * - The server's order wins (strongest first), so a client cannot steer to a weaker suite.
 * - Renegotiation refused (SSL_OP_NO_RENEGOTIATION): a client-initiated renegotiation costs the
 *   server a full handshake each time (CVE-2011-1473), and SMTP never needs one.
 * Constants only; it must not read certificates or decide anything per connection.
 */
import { constants } from 'node:crypto';

const TLS13_SUITES = ['TLS_AES_256_GCM_SHA384', 'TLS_CHACHA20_POLY1305_SHA256', 'TLS_AES_128_GCM_SHA256'];

const TLS12_SUITES = [
    'ECDHE-ECDSA-AES128-GCM-SHA256',
    'ECDHE-RSA-AES128-GCM-SHA256',
    'ECDHE-ECDSA-AES256-GCM-SHA384',
    'ECDHE-RSA-AES256-GCM-SHA384',
    'ECDHE-ECDSA-CHACHA20-POLY1305',
    'ECDHE-RSA-CHACHA20-POLY1305',
];

/** Options for tls.createSecureContext (and so for smtp-server), merged with the key and certificate. */
export const TLS_PROFILE = {
    minVersion: 'TLSv1.2',
    ciphers: [...TLS13_SUITES, ...TLS12_SUITES].join(':'),
    honorCipherOrder: true,
    secureOptions: constants.SSL_OP_NO_RENEGOTIATION | constants.SSL_OP_CIPHER_SERVER_PREFERENCE,
} as const;
