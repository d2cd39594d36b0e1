"""The catalog pages in a real headless browser (Chromium through Selenium): sign in as a
sample user, search, open a product, see classification badges and masks, never see a
restricted product, and follow a snippet to read the product for real."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service as ChromeService
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait


CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


@pytest.fixture(scope="module")
def browser():
    # scripts/test.sh installs Debian's chromium and chromium-driver: a missing browser is a
    # failure here, never a skip.
    assert Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists(), "install chromium and chromium-driver"
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1600",
                "--disable-gpu", "--no-first-run"]:
        options.add_argument(arg)
    driver = webdriver.Chrome(service=ChromeService(executable_path=CHROMEDRIVER), options=options)
    driver.implicitly_wait(10)
    yield driver
    driver.quit()


def sign_in(browser, server, user, path="/"):
    browser.delete_all_cookies()
    browser.get(f"{server.http}{path}")
    assert "/login" in browser.current_url
    browser.find_element(By.ID, "username").send_keys(user)
    browser.find_element(By.ID, "password").send_keys(f"{user}-dev-password")
    browser.find_element(By.ID, "sign-in").click()
    assert browser.find_element(By.ID, "signed-in-as").text == user


def listed(browser):
    return [li.get_attribute("data-address") for li in browser.find_elements(By.CSS_SELECTOR, "li.product")]


def test_sign_in_search_and_open_a_product(browser, secure):
    sign_in(browser, secure, "alice")
    shown = listed(browser)
    assert "sales/orders" in shown and "customers/profiles" in shown
    assert "sales/daily_revenue" not in shown and "_governance/audit" not in shown
    assert "daily_revenue" not in browser.page_source
    box = browser.find_element(By.ID, "search")
    box.send_keys("segment")
    browser.find_element(By.ID, "search-button").click()
    WebDriverWait(browser, 10).until(lambda b: "q=segment" in b.current_url)
    assert listed(browser) == ["customers/profiles"]
    browser.find_element(By.CSS_SELECTOR, "li.product a.address").click()
    assert browser.find_element(By.ID, "product-address").text == "customers/profiles"
    email = browser.find_element(By.CSS_SELECTOR, "tr[data-column=email]")
    badges = [b.text for b in email.find_elements(By.CSS_SELECTOR, ".badge")]
    assert badges == ["pii", "masked: redact"]
    # A restricted product's page does not exist for her.
    browser.get(f"{secure.http}/products/sales/daily_revenue")
    # The same answer as Flight's NOT_FOUND: it names what she may see, and only that.
    assert browser.find_element(By.ID, "error-message").text == \
        "domain `sales` has no product `daily_revenue`; products: `orders`"
    assert "404" in browser.find_element(By.TAG_NAME, "h1").text


def test_a_cleared_user_sees_pii_in_clear_and_the_restricted_product(browser, secure):
    sign_in(browser, secure, "carol", "/products/customers/profiles")
    assert browser.find_element(By.ID, "product-address").text == "customers/profiles"
    email = browser.find_element(By.CSS_SELECTOR, "tr[data-column=email]")
    assert [b.text for b in email.find_elements(By.CSS_SELECTOR, ".badge")] == ["pii"]
    browser.get(f"{secure.http}/")
    assert "sales/daily_revenue" in listed(browser)


def test_a_snippet_from_the_page_reads_the_product(browser, secure, tmp_path):
    sign_in(browser, secure, "alice", "/products/sales/orders")
    if os.environ.get("MESHGATE_SCREENSHOT"):
        browser.save_screenshot(os.environ["MESHGATE_SCREENSHOT"])
    code = browser.find_element(By.ID, "snippet-pyarrow").text
    assert "USER" in code and "PASSWORD" in code
    script = tmp_path / "read.py"
    script.write_text(code.replace("USER", "alice").replace("PASSWORD", "alice-dev-password"))
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    rows = int(out.stdout.split()[0])
    assert rows > 0
    # Signing out ends the session: the pages ask to sign in again.
    browser.find_element(By.ID, "sign-out").click()
    browser.get(f"{secure.http}/products/sales/orders")
    assert "/login" in browser.current_url


def test_the_audit_page_is_for_auditors(browser, secure):
    sign_in(browser, secure, "alice", "/audit")
    assert browser.find_element(By.ID, "audit-refused").text
    sign_in(browser, secure, "erin", "/audit")
    rows = browser.find_elements(By.CSS_SELECTOR, "#audit tbody tr")
    assert len(rows) > 1 and any("alice" in r.text for r in rows)
