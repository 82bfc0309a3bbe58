/**
 * The pregreet pass cache (src/pregreet.ts) over a memory store: a pass is remembered per client
 * address, an IPv6 client per /64 (a host picks the addresses of its /64 at will: a pass per
 * address let it fill the cache, and made it wait anew from every address), an IPv4-mapped
 * address as IPv4.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { ListenerConfig } from '../../src/config/types.ts';
import { createMemoryStore } from '../../src/limits/index.ts';
import { createLogger } from '../../src/log.ts';
import { acceptAll } from '../../src/pipeline.ts';
import { createPregreetGate } from '../../src/pregreet.ts';

const LISTENER = { name: 'mx', mode: 'mx', tls: 'none' } as unknown as ListenerConfig;

describe('pregreet pass cache', () => {
    it('remembers an IPv6 client per /64 and an IPv4 client per address', async () => {
        const gate = createPregreetGate({
            store: createMemoryStore(),
            ttlMs: 86_400_000,
            decider: () => acceptAll,
            exempt: null,
            now: () => 1_000_000,
            log: createLogger('silent'),
        });
        await gate.remember('2001:db8:1:2::1');
        assert.equal(await gate.lookup('2001:db8:1:2:ffff::99', LISTENER), 'cached', 'same /64');
        assert.equal(await gate.lookup('2001:db8:1:3::1', LISTENER), 'new', 'another /64');
        await gate.remember('192.0.2.7');
        assert.equal(await gate.lookup('::ffff:192.0.2.7', LISTENER), 'cached', 'IPv4-mapped is IPv4');
        assert.equal(await gate.lookup('192.0.2.8', LISTENER), 'new', 'IPv4 per address');
    });
});
