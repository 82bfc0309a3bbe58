/**
 * What a From field shows a reader besides its own address (shownDomain): an address in the
 * display name or a comment, plain, quoted or in RFC 2047 encoded-words, of another organization
 * than the author's. The sender chooses the value (up to the 100,000-byte author field limit), so
 * reading it must cost time linear in its length: values of the worst shapes are read at once,
 * and a property (fast-check, fixed seed; replay another with MW_FUZZ_SEED=<n>) checks that any
 * value is read without throwing and that a domain reported is one the value shows. A value with
 * right-to-left controls or marks and an address besides the author's (bidiAddressShown) is
 * reported whatever order a reader's bidirectional algorithm shows it in.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { decodeEncodedWords, decodeUtf7 } from '../../src/encoded-words.ts';
import { bidiAddressShown, shownDomain } from '../../src/shown-address.ts';

const SEED = Number(process.env.MW_FUZZ_SEED ?? 20261207);

describe('shownDomain', () => {
    it('finds an address of another organization in the display name or a comment', () => {
        assert.equal(shownDomain('"ceo@bank.example" <a@evil.example>', 'evil.example'), 'bank.example');
        assert.equal(shownDomain('ceo@bank.example <a@evil.example>', 'evil.example'), 'bank.example');
        assert.equal(shownDomain('a@evil.example (ceo@bank.example)', 'evil.example'), 'bank.example');
        assert.equal(shownDomain('"Bank <ceo@Bank.Example.>" <a@evil.example>', 'evil.example'), 'bank.example');
        assert.equal(shownDomain("'service@paypal.com' via Support <a@evil.example>", 'evil.example'), 'paypal.com');
    });
    it('decodes encoded-words in the name first, as a mail program shows them', () => {
        // "ceo@bank.example" in base64 and in Q
        assert.equal(
            shownDomain('=?utf-8?B?Y2VvQGJhbmsuZXhhbXBsZQ==?= <a@evil.example>', 'evil.example'),
            'bank.example',
        );
        assert.equal(
            shownDomain('=?ISO-8859-1?Q?ceo=40bank=2Eexample?= <a@evil.example>', 'evil.example'),
            'bank.example',
        );
        assert.equal(decodeEncodedWords('=?utf-8?q?J=C3=B6rg?= =?utf-8?q?_M?='), 'Jörg M');
        assert.equal(decodeEncodedWords('=?x-unknown?q?abc?='), 'abc');
    });
    it('reads the name as it is shown: lookalike @ and dots folded, invisible characters dropped', () => {
        for (const name of [
            'ceo@bank\u200b.example',
            'ceo@\u200bbank.example',
            'ceo@ba\u00adnk.example',
            'ceo@bank\u2060.example',
            'ceo\uff20bank.example',
            'ceo\ufe6bbank.example',
            'ceo@bank\uff0eexample',
            'ceo@bank\u3002example',
            'ceo@bank\uff61example',
            '\ufeffceo@bank.example',
            // drawn as a dot, but letters or punctuation that NFKC keeps
            'ceo@bank\ua4f8example',
            'ceo@bank\u2027example',
            'ceo@bank\u06d4example',
            // zeros of Arabic-Indic digits, the Vai and Kharoshthi full stops
            'ceo@bank\u0660example',
            'ceo@bank\u06f0example',
            'ceo@bank\ua60eexample',
            'ceo@bank\u{10a50}example',
            // a right-to-left override shows the text after it reversed, up to its end (U+202C)
            '\u202eelpmaxe.knab@oec',
            'CEO \u202eelpmaxe.knab@oec\u202c',
            '\u202eelpmaxe.knab@oec\u202c Office',
        ]) {
            assert.equal(
                shownDomain(`"${name}" <a@evil.example>`, 'evil.example'),
                'bank.example',
                JSON.stringify(name),
            );
        }
        assert.equal(
            shownDomain('=?utf-8?Q?ceo=40bank=E2=80=8B.example?= <a@evil.example>', 'evil.example'),
            'bank.example',
        );
    });
    it('keeps the middle dots IDNA allows inside a label (Catalan l·l, Japanese ・)', () => {
        assert.equal(shownDomain('Jordi <jordi@col\u00b7legi.cat>', 'xn--collegi-xma.cat'), null);
        assert.equal(
            shownDomain('"sales@example.co.jp\u30fb\u55b6\u696d\u90e8" <sales@example.co.jp>', 'example.co.jp'),
            null,
        );
    });
    it('decodes an unknown charset as UTF-8 and UTF-7 as UTF-7', () => {
        assert.equal(
            shownDomain('=?x-unknown?Q?ceo=40bank.example?= <a@evil.example>', 'evil.example'),
            'bank.example',
        );
        assert.equal(shownDomain('=?utf-7?Q?ceo+AEA-bank.example?= <a@evil.example>', 'evil.example'), 'bank.example');
        assert.equal(decodeUtf7('a+-b+AOk-c'), 'a+béc');
    });
    it("is not hidden behind addresses of the author's own organization", () => {
        const decoys = Array.from({ length: 30 }, () => 'a@evil.example').join(' ');
        assert.equal(shownDomain(`(${decoys}) "ceo@bank.example" <a@evil.example>`, 'evil.example'), 'bank.example');
        const many = Array.from({ length: 60 }, (_, i) => `a@h${i}.evil.example`).join(' ');
        assert.equal(shownDomain(`(${many}) <a@evil.example>`, 'evil.example'), 'h50.evil.example');
    });
    it('gives the domain in A-labels', () => {
        assert.equal(shownDomain('"ceo@bänk.example" <a@evil.example>', 'evil.example'), 'xn--bnk-qla.example');
    });
    it('reports nothing for a plain name, the same organization or no address shown', () => {
        assert.equal(shownDomain('The CEO <ceo@bank.example>', 'bank.example'), null);
        assert.equal(shownDomain('ceo@bank.example', 'bank.example'), null);
        assert.equal(shownDomain('"service@paypal.com" <service@mail.paypal.com>', 'mail.paypal.com'), null);
        assert.equal(shownDomain('"Alice @ home" <alice@example.org>', 'example.org'), null);
        assert.equal(shownDomain('"me@localhost" <alice@example.org>', 'example.org'), null);
        assert.equal(shownDomain('', 'example.org'), null);
    });
    it('reports any shown address when the From has no address with a domain', () => {
        assert.equal(shownDomain('"ceo@bank.example" <undisclosed>', null), 'bank.example');
    });
    it('reads the worst shapes of a 100,000-byte value at once', () => {
        const shapes = [
            '@'.repeat(100_000),
            'a@'.repeat(50_000),
            `a@${'b.'.repeat(49_999)}`,
            '=?'.repeat(50_000),
            `=?utf-8?q?${'='.repeat(99_980)}`,
            `?=${' '.repeat(99_990)}`,
            `${'x@same.example '.repeat(6_000)}`,
            `"${'a@b'.repeat(33_000)}" <a@evil.example>`,
            `"x@a${'-'.repeat(99_800)}b.c" <a@evil.example>`,
            `"x@a${'_'.repeat(99_800)}" <a@evil.example>`,
            `"x@a.${'b.'.repeat(49_000)}" <a@evil.example>`,
            '\u200b'.repeat(100_000),
            '\uff20'.repeat(100_000),
            '\u202e'.repeat(100_000),
            '\u202e\u202c'.repeat(50_000),
            `\u202e${'x@same.example '.repeat(6_000)}`,
            // bidirectional marks and controls with @ signs, plain, lookalike or encoded
            '\u200f'.repeat(100_000),
            '\u200f@'.repeat(50_000),
            `\u2067${'\uff20'.repeat(99_999)}`,
            `\u202b${'\ufe6b\u200f'.repeat(49_999)}`,
            `${'a'.repeat(99_990)}\u061c@x@y`,
            `\u2066${'=?utf-8?q?=E2=80=8F@?= '.repeat(4_000)}`,
        ];
        for (const value of shapes) {
            for (const read of [
                () => shownDomain(value, 'same.example'),
                () => bidiAddressShown(value, 'same.example'),
            ]) {
                const started = performance.now();
                read();
                const ms = performance.now() - started;
                assert.ok(ms < 250, `${JSON.stringify(value.slice(0, 20))}…: ${ms.toFixed(0)} ms`);
            }
        }
    });
    it('never throws, and a domain it reports is written in the value (property)', () => {
        const piece = fc.constantFrom(
            '@',
            '.',
            '"',
            '<',
            '>',
            '(',
            ')',
            ' ',
            '=?',
            '?=',
            '?b?',
            '?q?',
            'utf-8',
            'a',
            'bank',
            'example',
            'x-y',
            'é',
        );
        fc.assert(
            fc.property(fc.array(piece, { maxLength: 40 }), (parts) => {
                const value = parts.join('');
                const got = shownDomain(value, 'evil.example');
                if (got !== null) {
                    assert.ok(!got.endsWith('evil.example'));
                    const shown = decodeEncodedWords(value).toLowerCase();
                    const first = got.split('.')[0]!;
                    assert.ok(shown.includes(first) || got.startsWith('xn--'), `${got} from ${value}`);
                }
            }),
            { seed: SEED, numRuns: 3000 },
        );
    });
});

describe('bidiAddressShown', () => {
    // each is shown as ceo@bank.example by the bidirectional algorithm (UAX #9), in an order
    // shownDomain does not read
    const bypasses = [
        // a right-to-left isolate with right-to-left marks around the dot and the @
        '\u2067example\u200f.\u200fbank\u200f@\u200fceo\u2069',
        // the same with a right-to-left embedding and its pop
        '\u202bexample\u200f.\u200fbank\u200f@\u200fceo\u202c',
        // an override with an empty isolate inside, which cuts the run shownDomain reverses
        '\u202eelpmaxe\u2066\u2069.knab@oec',
        // the same with an empty left-to-right embedding
        '\u202eelpmaxe\u202a\u202c.knab@oec',
    ];
    it('reports an address written with right-to-left controls in the name', () => {
        for (const name of bypasses) {
            assert.equal(bidiAddressShown(`"${name}" <a@evil.example>`, 'evil.example'), true, JSON.stringify(name));
            assert.equal(bidiAddressShown(`a@evil.example (${name})`, 'evil.example'), true, JSON.stringify(name));
        }
        // an override alone (shownDomain reads it too), a lookalike @, an Arabic letter mark
        assert.equal(bidiAddressShown('"\u202eelpmaxe.knab@oec" <a@evil.example>', 'evil.example'), true);
        assert.equal(bidiAddressShown('"\u2067example.bank\uff20ceo\u2069" <a@evil.example>', 'evil.example'), true);
        assert.equal(bidiAddressShown('"\u2067example.bank\ufe6bceo\u2069" <a@evil.example>', 'evil.example'), true);
        assert.equal(bidiAddressShown('"example.bank@ceo\u061c" <a@evil.example>', 'evil.example'), true);
    });
    it('decodes encoded-words first, as shownDomain does', () => {
        // U+2067 example U+200F . U+200F bank U+200F @ U+200F ceo U+2069 in Q
        const q = '=?utf-8?Q?=E2=81=A7example=E2=80=8F=2E=E2=80=8Fbank=E2=80=8F=40=E2=80=8Fceo=E2=81=A9?=';
        assert.equal(bidiAddressShown(`${q} <a@evil.example>`, 'evil.example'), true);
        assert.equal(
            bidiAddressShown(
                `=?utf-8?B?${Buffer.from(bypasses[0]!).toString('base64')}?= <a@evil.example>`,
                'evil.example',
            ),
            true,
        );
    });
    it("leaves right-to-left names with only the author's address, and addresses without controls", () => {
        // Arabic and Hebrew names with marks, embeddings and isolates
        assert.equal(
            bidiAddressShown(
                '"\u200f\u0645\u062d\u0645\u062f \u0623\u062d\u0645\u062f\u200f" <m@example.org>',
                'example.org',
            ),
            false,
        );
        assert.equal(
            bidiAddressShown(
                '=?utf-8?Q?=E2=80=8F=D7=93=D7=A0=D7=94_=D7=9B=D7=94=D7=9F?= <dana@example.co.il>',
                'example.co.il',
            ),
            false,
        );
        assert.equal(
            bidiAddressShown(
                '\u202b\u05d3\u05e0\u05d4 \u05db\u05d4\u05df (IT)\u202c <dana@example.co.il>',
                'example.co.il',
            ),
            false,
        );
        assert.equal(
            bidiAddressShown('\u2067\u0633\u0627\u0631\u0629\u2069 \u200e<sara@example.org>\u200e', 'example.org'),
            false,
        );
        // a second address without any control is shownDomain's, not this one's
        assert.equal(bidiAddressShown('"ceo@bank.example" <a@evil.example>', 'evil.example'), false);
        assert.equal(bidiAddressShown('The CEO <ceo@bank.example>', 'bank.example'), false);
        assert.equal(bidiAddressShown('', null), false);
    });
    it("leaves a right-to-left name that repeats the author's own address, in the name or a comment", () => {
        const hebrew = '\u200f\u05d3\u05e0\u05d9 \u05db\u05d4\u05df\u200f';
        assert.equal(bidiAddressShown(`"${hebrew}" <dani@company.co.il> (dani@company.co.il)`, 'company.co.il'), false);
        assert.equal(bidiAddressShown(`"${hebrew} dani@company.co.il" <dani@company.co.il>`, 'company.co.il'), false);
        assert.equal(bidiAddressShown('"\u200eahmad@corp.example\u200e" <ahmad@corp.example>', 'corp.example'), false);
        // the same organization's other domain passes too; another organization's does not
        assert.equal(bidiAddressShown('"\u200fsales@mail.corp.example\u200f" <a@corp.example>', 'corp.example'), false);
        assert.equal(bidiAddressShown('"\u200fsales@corp.example\u200f" <a@evil.example>', 'evil.example'), true);
    });
});
