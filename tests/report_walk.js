// Loaded by tests/test_report_browser.py into Snakemake's report, once the page has loaded. It only
// reads the page: what the first screen shows, where the thing to click next is (the test clicks it
// with a real mouse event), and what a view shows once opened. Nothing here changes the page.
"use strict";
window.reportCheck = (() => {
    const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
    const text = (el) => el.textContent.trim();
    const box = (el) => {
        const r = el.getBoundingClientRect();
        return { top: r.top, bottom: r.bottom, left: r.left, right: r.right };
    };
    async function until(find, what, timeoutMs = 10000) {
        const start = performance.now();
        while (performance.now() - start < timeoutMs) {
            const found = find();
            if (found) return found;
            await sleep(50);
        }
        throw new Error(`not shown within ${timeoutMs} ms: ${what}`);
    }
    const navbar = () => document.querySelector("#app nav");
    const content = () => document.querySelector("#app > div > div.grow"); // right of the navbar
    const menuItem = (label) => [...navbar().querySelectorAll("ul > li > a")].find((a) => text(a) === label);
    const view = () => content().querySelector("img[src^='data:'], iframe[src^='data:']");

    // Where a mouse click lands on `el`, once the navbar's width transition is over and nothing covers
    // it there (a click computed mid-transition lands beside a button that is still moving).
    async function target(el, what) {
        const moving = (a) => a.playState === "running" && a.effect.getTiming().iterations !== Infinity;
        await until(() => !document.getAnimations().some(moving), `${what} at rest`);
        let before;
        await until(() => {
            const now = JSON.stringify(box(el));
            const still = now === before;
            before = now;
            return still;
        }, `${what} at rest`);
        const r = box(el);
        const x = (r.left + r.right) / 2;
        const y = (r.top + r.bottom) / 2;
        const hit = document.elementFromPoint(x, y);
        if (!hit || !(hit === el || el.contains(hit))) {
            throw new Error(`${what} at (${x}, ${y}) is covered by ${hit ? hit.outerHTML.slice(0, 120) : "nothing"}`);
        }
        return { x, y, label: text(el) };
    }

    // The row of `path` in a results table: its cells are the result's label values (else its path).
    function row(path) {
        const entry = results[path];
        const expected = (entry.labels ? Object.values(entry.labels) : [path]).map(String).sort();
        return [...navbar().querySelectorAll("table tbody tr")].find((tr) => {
            const cells = [...tr.cells].slice(0, -1).map(text).filter(Boolean).sort();
            return JSON.stringify(cells) === JSON.stringify(expected);
        });
    }

    return {
        async firstScreen() {
            await until(() => navbar() && menuItem("Workflow"), "the report's menu");
            const table = [...content().querySelectorAll("table")].find((t) => t.textContent.includes("mAP50-95"));
            const heading = content().querySelector("h1");
            const warning = [...content().querySelectorAll("strong")].find((s) => text(s).includes("RANDOM WEIGHTS"));
            return {
                viewport: { width: window.innerWidth, height: window.innerHeight },
                menu: [...navbar().querySelectorAll("ul > li > a")].map(text),
                title: heading && { text: text(heading), box: box(heading) },
                warning: warning && { text: text(warning), box: box(warning) },
                table: table && {
                    box: box(table),
                    header: [...table.querySelectorAll("thead th")].map(text),
                    rows: [...table.querySelectorAll("tbody tr")].map((tr) => [...tr.cells].map(text)),
                },
            };
        },
        categories() {
            return categories;
        },
        // The breadcrumb's home icon: back to the menu, no result shown.
        async home() {
            return await target(navbar().querySelector("ol > li > a"), "the home breadcrumb");
        },
        async menu(label) {
            await until(() => !view(), "the menu, no result shown");
            return await target(await until(() => menuItem(label), `menu item ${label}`), `menu item ${label}`);
        },
        // The eye button of path's row; a result Snakemake cannot show (CSV) is a download link instead.
        async button(path) {
            const found = await until(() => row(path), `the row of ${path}`);
            const link = found.querySelector("td:last-child a");
            if (link.hasAttribute("download")) {
                return { download: link.getAttribute("download"), sameData: link.getAttribute("href") === results[path].data_uri };
            }
            return await target(link, `the view button of ${path}`);
        },
        // What the content area shows once path is opened: the picture as decoded, or the HTML frame.
        async shown(path) {
            const uri = results[path].data_uri;
            const el = await until(() => {
                const found = view();
                return found && found.getAttribute("src") === uri && found;
            }, `the view of ${path}`);
            const record = { kind: el.tagName.toLowerCase() };
            if (record.kind === "img") {
                await until(() => el.complete, `${path} loaded`);
                Object.assign(record, { naturalWidth: el.naturalWidth, naturalHeight: el.naturalHeight });
            }
            await sleep(200); // let the frame paint before the screenshot
            record.box = box(el);
            return record;
        },
    };
})();
